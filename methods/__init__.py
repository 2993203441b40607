"""Methods under study (VLM2Rec)."""
