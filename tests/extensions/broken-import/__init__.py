"""A test extension that cannot even be imported."""
raise RuntimeError("this extension is broken on purpose")
