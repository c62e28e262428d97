"""TF Serving: configuration, warm-up requests, clients and a development server."""

from mm_keras.serving import warmup
from mm_keras.serving.client import GrpcClient, RestClient, ServingError
from mm_keras.serving.config import write_batching_parameters, write_model_config
from mm_keras.serving.dev_server import DevServer
