"""gradserve's workers: the function language, torch.func computations, the Ray actor.

Importing this package does not import torch: the server imports the
torch-free parts (``lang.validate``, ``report``, ``tasks``) on its request path.
"""
