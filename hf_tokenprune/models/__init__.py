# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""The remote-code island: every file here is copied flat into a checkpoint by ``save_pretrained``."""
