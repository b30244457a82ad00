"""The ``freerouter`` console script, kept outside the package on purpose.

Importing ``litellm_freerouter`` imports litellm, and litellm downloads its model-price map on
import unless told otherwise; the command never needs prices, and offline that download prints
warnings and retries for seconds. So the default is set here, before anything imports litellm.
"""

import os


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm_freerouter.cli import main as run

    run()
