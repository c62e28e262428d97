"""TF Serving: configuration, warm-up requests, clients and a development server."""

from mm_keras.serving import warmup
