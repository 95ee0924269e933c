"""lab-ray: the LAB method (Large-scale Alignment for chatBots) on Ray."""

__version__ = "0.1.0"
