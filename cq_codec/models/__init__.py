"""Models: one residual module, the CQ codec (LPC front end + cascade)."""
