"""Using a trained model: the predictor, its entity index, model backends (PyTorch, int8, ONNX), export and the HTTP
service."""
