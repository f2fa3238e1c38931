"""egressgw: an egress gateway that accounts for its SNAT source ports."""

__version__ = "0.1.0"
