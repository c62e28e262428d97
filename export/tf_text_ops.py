"""Regenerates `mm_keras/export/tf_text_ops.json`: which TF Text ops the stock server knows.

    python export/tf_text_ops.py \
        --stock_wheel=tensorflow_text-2.12.0-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl

The stock `tensorflow/serving` image embeds TF Text 2.12 (tensorflow/serving PR #4057). This
lists the ops the installed TF Text registers (the registry before and after importing it)
and, of those, the ones whose names appear in the shared libraries of the given TF Text wheel
(`pip download tensorflow-text==2.12.0 --no-deps --only-binary=:all: --python-version 3.10
--platform manylinux_2_17_x86_64`). Run it when TF Text or the stock image changes.
"""

import glob
import json
import os
import re
import tempfile
import zipfile

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("stock_wheel", None, "TF Text wheel of the stock TF Serving image.")
flags.DEFINE_string("stock_version", "2.12.0", "That wheel's TF Text version.")
flags.DEFINE_string(
    "output",
    os.path.join(os.path.dirname(__file__), "..", "mm_keras", "export", "tf_text_ops.json"),
    "Where the JSON is written.",
)
flags.mark_flag_as_required("stock_wheel")


def registered_ops():
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    op_list = op_def_pb2.OpList()
    op_list.ParseFromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
    return {op.name for op in op_list.op}


def names_in_wheel(wheel, names):
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.endswith(".so")]
            archive.extractall(tmp, members)
        blob = b"".join(
            open(path, "rb").read() for path in glob.glob(f"{tmp}/**/*.so", recursive=True)
        )
    pattern = rb"(?<![A-Za-z0-9_>])%s(?![A-Za-z0-9_])"
    return sorted(n for n in names if re.search(pattern % re.escape(n.encode()), blob))


def main(argv):
    del argv
    import tensorflow as tf

    core = registered_ops()
    import tensorflow_text

    tf_text_ops = sorted(registered_ops() - core)
    result = {
        "tensorflow": tf.__version__,
        "tf_text_installed": tensorflow_text.__version__,
        "tf_text_installed_ops": tf_text_ops,
        "tf_text_stock_serving": FLAGS.stock_version,
        "tf_text_stock_serving_ops": names_in_wheel(FLAGS.stock_wheel, tf_text_ops),
    }
    with open(FLAGS.output, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    missing = sorted(set(tf_text_ops) - set(result["tf_text_stock_serving_ops"]))
    print(f"{len(tf_text_ops)} TF Text ops; missing from {FLAGS.stock_version}: {missing}")


if __name__ == "__main__":
    app.run(main)
