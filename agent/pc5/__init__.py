"""Emulated C-V2X PC5 sidelink: the receiver-side radio model and the CAM/DENM-like V2V messages."""
