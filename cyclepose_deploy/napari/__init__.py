"""The napari plugin (npe2 manifest napari.yaml, entry point `napari.manifest` in pyproject.toml): a dock
widget that segments a 2-D image layer with a cyclepose export. `pip install 'cyclepose-deploy[napari]'`.

segment.py is the work, without napari (tested where napari is absent); widget.py the Qt widget. Nothing
here is imported by `import cyclepose_deploy`, and nothing outside this folder imports napari."""
