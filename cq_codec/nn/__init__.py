"""Neural-network building blocks."""
from cq_codec.nn.blocks import *  # noqa: F401,F403
from cq_codec.nn.blocks import __all__  # noqa: F401
