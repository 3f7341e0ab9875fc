"""Model registry: conversion of Hugging Face folders to int4 ONNX and test-model recipes."""
