"""One file per algorithm: a Config dataclass, a ``train()`` loop written out, and ``main()``.

An algorithm file never imports another algorithm file; shared logic lives in the core.
"""
