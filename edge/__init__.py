"""The on-device runtime: numpy, OpenCV and a TFLite interpreter only.

Never imports TensorFlow or Keras at module level (tf.lite is only the last fallback
interpreter, loaded when neither ai-edge-litert nor tflite-runtime is installed).
"""
