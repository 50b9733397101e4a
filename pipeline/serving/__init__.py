"""Code that runs inside Triton (python-backend models), not in the pipeline's processes.

`onnx_model.py` is linked as ``model.py`` into derived model repositories by
`pipeline.embedded.triton`; it is never imported by the pipeline itself.
"""
