"""Admission: which ready jobs go to the workers next (fair share, caps, pauses), and publishing them."""
