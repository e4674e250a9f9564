"""The parts the example scripts are built from (the scripts in examples/ are thin commands).

- ``plots``: pictures with Pillow alone (grids, charts, mosaics, heat maps), written atomically;
  shared by the selfie and Fashion-MNIST examples.
- ``selfie_data``: the procedural selfie generator, the post's groups-of-100 labeller, and the
  loaders for image folders, the Selfie dataset layout and a posts CSV.
- ``selfie_model``: the selfie ConvNet, loading a trained model, P(good), crops and saliency.
- ``selfie_report``: the train/val/test split, the rules table and the pictures of a run.
- ``faces``: the face filter: its training windows (lfw, generator backgrounds, photographs
  without a person, textures), training with hard-negative mining, the sliding-window search;
  ``faces_report``: training it as ``selfie_faces.py --train`` does, and its pictures.
- ``tsne``: a small t-SNE for the map of held-out selfies.

A script finds this package because Python puts the script's own folder on its path.
"""
