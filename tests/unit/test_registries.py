"""The registries (cvaudit.core.registry) are the one list of attribution methods, invariance families and
attacks: the schema's enums and defaults agree with them, and every entry resolves to what it names."""
import inspect

import yaml

from cvaudit.core import registry

from conftest import REPO

SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
PROPS = SCHEMA["properties"]


def _defaults(block: dict) -> dict:
    if "$ref" in block:
        block = SCHEMA["$defs"][block["$ref"].split("/")[-1]]
    return {k: v["default"] for k, v in block.get("properties", {}).items() if "default" in v}


def test_the_schemas_method_enum_is_the_registry():
    methods = PROPS["explain"]["properties"]["methods"]
    listed = set(registry.METHODS) - {registry.FLOOR_METHOD}
    assert set(methods["items"]["enum"]) == listed and set(methods["default"]) == listed


def test_every_method_resolves_to_its_class_and_its_defaults_are_the_schemas():
    from cvaudit.explain.methods import AttributionMethod
    explain = PROPS["explain"]["properties"]
    checked = 0
    for name, ref in registry.METHODS.items():
        cls = registry.load(ref)
        assert inspect.isclass(cls) and issubclass(cls, AttributionMethod) and cls.name == name
        if name in explain:  # its options block: every default the class has, the same value
            schema = _defaults(explain[name])
            own = {k: v for k, v in cls.defaults.items() if k != "seed"}  # the run's seed is passed in
            assert schema == own, name
            checked += 1
    assert checked == 15  # gradcam, guided_gradcam, occlusion, integrated_gradients, lime, the SHAP family, the SmoothGrads,
    # deeplift, deeplift_shap, lrp, attention_rollout


def test_the_schemas_families_are_the_registry_and_each_default_includes_the_identity():
    from cvaudit.robust.invariance import IDENTITY
    inv = PROPS["robustness"]["properties"]["invariance"]
    assert set(inv["properties"]) == set(registry.FAMILIES) == set(inv["default"]) == set(IDENTITY)
    for name, family in registry.FAMILIES.items():
        assert callable(registry.load(family.ref)) and family.ref.endswith(":" + name)
        assert family.identity in inv["default"][name], name  # the clean point of every curve
    for name in registry.FAMILIES:  # the schema's description says what each family's severity means
        assert f"{name}:" in inv["description"] or f"{name}," in inv["description"], name


def test_the_schemas_attacks_are_the_registry_and_each_reads_keys_the_schema_has():
    adv = PROPS["robustness"]["properties"]["adversarial"]
    assert set(adv["properties"]["attacks"]["items"]["enum"]) == set(registry.ATTACKS)
    assert set(adv["properties"]["attacks"]["default"]) == set(registry.ATTACKS) - {registry.BLACK_BOX_ATTACK}
    assert [a for a, attack in registry.ATTACKS.items() if attack.gradient_free] == [registry.BLACK_BOX_ATTACK]
    for name, attack in registry.ATTACKS.items():
        assert callable(registry.load(attack.ref)) and attack.ref.endswith(":" + name)
        assert set(attack.reads + registry.SHARED_ATTACK_OPTIONS) <= set(adv["properties"]), name
    options = {"max_images": 1, "epsilons": [0], "examples": 0, "example_epsilon": 0, "pgd": {}, "autoattack": {},
               "masking": {}, "check_epsilon": 0, "enabled": True, "attacks": []}
    assert set(registry.attack_options(options, "fgsm")) == set(registry.SHARED_ATTACK_OPTIONS)
    assert "pgd" in registry.attack_options(options, "pgd") and "pgd" not in registry.attack_options(options, "autoattack")


def test_the_snakefile_reads_the_registry_without_importing_torch():
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, 'scripts'); import cvaudit.core.registry, cvaudit.config, "
            "cvaudit.data.fingerprint, cvaudit.core.job; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    common = (REPO / "rules" / "common.smk").read_text()
    assert "from cvaudit.core.registry import" in common and "family=one_of(FAMILIES)" in common
