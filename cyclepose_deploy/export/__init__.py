"""Checkpoint -> ONNX fp32/fp16/int8 -> TensorRT engine, each verified against torch, with a manifest."""
