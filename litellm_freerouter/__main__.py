"""``python -m litellm_freerouter``: the ``freerouter`` command."""

from .cli import main

if __name__ == "__main__":
    main()
