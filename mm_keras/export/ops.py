"""Which ops an exported graph uses, and whether the stock TF Serving image has them.

The stock `tensorflow/serving` image embeds an old TF Text (see `tf_text_ops.json`, made by
`export/tf_text_ops.py`): a SavedModel using a TF Text op added later fails to load there
with "Op type not registered". mm_keras tokenizes in the serving graph with core ops only
(`ServingWordPiece`), and every export still lists the graph's non-core ops and refuses
those the stock server lacks unless the caller allows them (for a server built with a
newer TF Text), so a tower that brings TF Text ops in is caught at export time.
"""

import functools
import json
import os

from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

_TABLE = os.path.join(os.path.dirname(__file__), "tf_text_ops.json")


@functools.lru_cache(maxsize=1)
def tf_text_ops():
    """(ops the installed TF Text registers, ops the stock TF Serving image's TF Text has)."""
    with open(_TABLE) as f:
        table = json.load(f)
    return frozenset(table["tf_text_installed_ops"]), frozenset(table["tf_text_stock_serving_ops"])


def saved_model_ops(export_dir):
    """Sorted names of every op in a SavedModel's graph, functions included."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    names = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        names.update(node.op for node in graph.node)
        for function in graph.library.function:
            names.update(node.op for node in function.node_def)
    return sorted(names)


def non_core_ops(op_names):
    """The ops that are not core TensorFlow: TF Text's, or ones no loaded library registers."""
    installed, _ = tf_text_ops()
    return sorted(n for n in op_names if n in installed or op_def_registry.get(n) is None)


def check_stock_serving_ops(op_names, allow_ops=()):
    """Raises if the graph needs an op the stock TF Serving image lacks and it is not allowed.

    Args:
        op_names: iterable of op names in the graph.
        allow_ops: op names to accept anyway (the server has them).

    Returns:
        The sorted non-core ops of the graph.
    """
    _, stock = tf_text_ops()
    non_core = non_core_ops(op_names)
    refused = [n for n in non_core if n not in stock and n not in set(allow_ops)]
    if refused:
        raise ValueError(
            "The serving graph uses ops the stock tensorflow/serving image does not register "
            f"(its TF Text is older). Expected only core ops or {sorted(stock)}. "
            f"Received: {refused}. Pass them in `allow_ops` if your server registers them."
        )
    return non_core
