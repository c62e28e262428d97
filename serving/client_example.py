"""Query a served dual encoder: zero-shot classification of an image, over REST or gRPC.

    make demo                                  # trains and exports the model
    python -m mm_keras.serving.dev_server &    # or: docker compose -f serving/docker-compose.yml up
    python serving/client_example.py           # REST on 127.0.0.1:8501
    python serving/client_example.py --grpc=127.0.0.1:8500   # gRPC: TF Serving, or the dev
                                                              # server started with --port=8500

Embeds one test image, sent as PNG bytes, with the `embed_image` signature and the class
prompts with `embed_text`, and prints the digit whose prompts are most similar.
"""

import numpy as np
import tensorflow as tf
from absl import app, flags

from mm_keras.data import datasets
from mm_keras.eval import prompt_ensemble
from mm_keras.serving import GrpcClient, RestClient

FLAGS = flags.FLAGS
flags.DEFINE_string("url", "http://127.0.0.1:8501", "TF Serving REST address.")
flags.DEFINE_string("grpc", None, "TF Serving gRPC address (host:port); REST when unset.")
flags.DEFINE_string("model_name", "clip", "Served model name.")
flags.DEFINE_integer("index", 0, "Which test-split image to classify.")


def main(argv):
    del argv
    test = datasets.load_digits_arrays("test", ("image",))
    image = tf.io.encode_png(test["image"][FLAGS.index]).numpy()
    prompts = datasets.class_prompts()
    texts = [p for ps in prompts for p in ps]
    if FLAGS.grpc:
        client = GrpcClient(FLAGS.grpc, FLAGS.model_name)
    else:
        client = RestClient(FLAGS.url, FLAGS.model_name)
    # Columnar inputs: one image, many prompts (the row format needs equal counts).
    image_embedding = client.predict({"image": [image]}, "embed_image")["image_embedding"]
    text_embedding = client.predict({"text": texts}, "embed_text")["text_embedding"]
    classes = prompt_ensemble(text_embedding, [len(p) for p in prompts])
    scores = image_embedding @ classes.T
    print(
        f"image {FLAGS.index} (label {test['label'][FLAGS.index]}): predicted digit "
        f"{int(np.argmax(scores))}, scores {[round(float(s), 3) for s in scores[0]]}"
    )


if __name__ == "__main__":
    app.run(main)
