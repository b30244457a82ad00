"""The ``freerouter`` console script, kept outside the package on purpose.

Importing ``litellm_freerouter`` imports litellm, and litellm downloads its model-price map on
import unless told otherwise; the command never needs prices, and offline that download prints
warnings and retries for seconds. So the default is set here, before anything imports litellm.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        # Importing litellm takes a second or more: a Ctrl-C may land here, before the
        # command's own handler is in place. Nothing has started yet.
        from litellm_freerouter.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("freerouter: interrupted\n")
        raise SystemExit(130) from None
    run()
