"""A numpy reference forward pass of MiniCPM-V 2.6, fed chunk by chunk in execution order."""
