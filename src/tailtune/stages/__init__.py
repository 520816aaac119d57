"""Training stages beyond one classifier fit: masked-LM adaptation (``lm``) and prompt pre-training (``ppt``)."""
