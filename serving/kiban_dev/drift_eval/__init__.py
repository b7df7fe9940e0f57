"""`kiban drift eval`: the drift detector measured on real traces played back to back."""
