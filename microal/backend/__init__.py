"""Where jobs are executed: Ray (the one module that imports it)."""
