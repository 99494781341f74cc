"""Architectures: block strings, the MnasNet search space, the zoo, cost, torch and .tflite builders."""
