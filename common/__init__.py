"""Small pieces every app may use: the domain error, the read-only admin mixin, the process
supervisor. Imports Django and the standard library only, never an app or ``config``."""
