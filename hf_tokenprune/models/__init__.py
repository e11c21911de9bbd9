"""The remote-code island: every file here is copied flat into a checkpoint by ``save_pretrained``."""
