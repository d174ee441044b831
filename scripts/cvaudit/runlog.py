"""Glue for entry scripts: log to the rule's log file, progress to it too, clear errors on failure."""
from __future__ import annotations

import logging
import sys
import traceback

from . import CvauditError


def run(main, sm) -> None:
    """Run `main(sm)` with logging and stderr (progress bars) sent to the rule's log file.

    A CvauditError (bad input, bad config) is printed as one clear line to the console and the log;
    any other exception leaves its traceback in the log and points the user there.
    """
    log_path = sm.log[0] if len(sm.log) else None
    console = sys.stderr
    handlers: list[logging.Handler] = [logging.StreamHandler(console)]
    log_file = None
    if log_path:
        log_file = open(log_path, "w", buffering=1)
        handlers.append(logging.StreamHandler(log_file))
        sys.stderr = log_file  # tqdm and library warnings go to the log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    for noisy in ("weasyprint", "fontTools", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main(sm)
    except CvauditError as e:
        msg = f"cvaudit error in rule {getattr(sm, 'rule', '?')}: {e}"
        print(msg, file=console)
        if log_file:
            print(msg, file=log_file)
        sys.exit(1)
    except Exception:
        if log_file:
            traceback.print_exc(file=log_file)
            print(f"cvaudit: unexpected error in rule {getattr(sm, 'rule', '?')}; traceback in {log_path}",
                  file=console)
        raise
    finally:
        sys.stderr = console
        if log_file:
            log_file.close()
