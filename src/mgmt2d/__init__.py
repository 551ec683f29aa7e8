"""mgmt2d: two-stage 2D MGMT promoter methylation prediction from brain MRI."""

__version__ = "0.1.0"
