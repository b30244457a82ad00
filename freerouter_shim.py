"""freerouter/auto for litellm 1.81.x proxies, which only load a handler from a file here.

Copy this file beside config.yaml and set ``custom_handler: freerouter_shim.handler``.
"""

from litellm_freerouter import handler as handler
