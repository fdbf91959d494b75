"""The bundled datasets (WN18RR, FB15k-237) as compressed archives, read by
:func:`kgdistill.data.loading.load_dataset`."""
