"""The report of a comparison experiment (issue 9): ``pycopy-compare DIR``.

An optional part of the package (``pip install 'pycopy-engine[compare]'``
adds jinja2); the replay hosts never import it.
"""
