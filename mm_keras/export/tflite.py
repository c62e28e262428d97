"""TFLite export of each tower of a dual encoder, in four precision modes, builtins only."""

import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

MODES = ("float32", "dynamic", "float16", "int8")

# In "int8" mode only these run in int8: the weight-carrying matmuls and the embedding
# lookup (a copy). The rest (LayerNorm's MEAN, SQUARED_DIFFERENCE, RSQRT, elementwise
# ADD/MUL, attention's BATCH_MATMUL, ...) stays float: the TFLite CPU kernels for those in
# int8 are slow and the QUANTIZE/DEQUANTIZE between them costs more than they save
# (measured on a width-256 tower on a 2-core machine: all-int8 1.1x the float32 latency,
# matmuls-only 0.33x; adding GELU 0.35x, adding attention's BATCH_MATMUL 0.64x; per-channel
# weights 0.33x too. On a Xeon with AVX-512 VNNI and AMX: matmuls-only 0.23x, from
# `benchmarks/export.py`; FULLY_CONNECTED and BATCH_MATMUL in int8 0.73x and every op in
# int8 1.25x, with ai-edge-quantizer, see docs/DESIGN.md).
INT8_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "GATHER")

_OP_NAMES = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}
_LOG = schema.BuiltinOperator.LOG


def tower_input_spec(model, modality, batch_size=1):
    """The fixed-shape input a tower's TFLite file takes: uint8 pixels, int32 token ids or
    float32 waveforms (see `mm_keras.models.TowerInput`)."""
    tower = model.tower_input(modality)
    if tower is None:
        raise ValueError(
            "Expected a text, image or audio tower. "
            f"Received: {modality!r}, which reports no tower input"
        )
    return tf.TensorSpec((batch_size, *tower.shape), tower.dtype, name=modality)


def tflite_ops(tflite_model):
    """Sorted names of the operators in a TFLite flatbuffer (custom ops by their code)."""
    model = schema.Model.GetRootAs(tflite_model, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.add(code.CustomCode().decode())
        else:
            names.add(_OP_NAMES[builtin])
    return sorted(names)


def int8_ops(tflite_model):
    """Sorted names of the operators that run on int8 tensors in a TFLite flatbuffer."""
    model = schema.Model.GetRootAs(tflite_model, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    names = set()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            inputs = [op.Inputs(i) for i in range(op.InputsLength()) if op.Inputs(i) >= 0]
            if any(graph.Tensors(t).Type() == schema.TensorType.INT8 for t in inputs):
                code = codes[op.OpcodeIndex()]
                names.add(_OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    return sorted(names - {"QUANTIZE", "DEQUANTIZE"})


def convert_tower(
    model,
    modality,
    mode="float32",
    representative_inputs=None,
    allow_flex=False,
    layers_used=False,
):
    """Converts one tower of a dual encoder to a TFLite flatbuffer.

    The tower maps a batch of one raw input (uint8 pixels `[1, H, W, C]`, int32 token ids
    `[1, L]` from `TextTokenizer`, or float32 waveforms `[1, num_samples]` in [-1, 1]) to
    its unit-norm embedding, output `"embedding"`. An audio tower's STFT converts to the
    builtin `RFFT2D` and `COMPLEX_ABS`, its gain normalisation to `MEAN`/`SQRT`. The
    fixed batch of one keeps shape arithmetic out of the graph. Ids of padding only (which
    the shipped tokenizer never makes: it refuses text without a token) embed to the zero
    vector, never NaN (see `mm_keras.layers.pooling.l2_normalize`).

    Modes: `"float32"`; `"dynamic"` (weights int8, activations float); `"float16"` (weights
    float16); `"int8"` (weights and activations int8 for `INT8_OPS`, calibrated on
    `representative_inputs`, every other op in float). In `"dynamic"` and `"int8"` an
    audio tower's spectrogram, every op before the log-mel's LOG, stays float32 (see
    `spectrogram_nodes` and `float_spectrogram_weights`).

    Args:
        model: a `DualEncoder`.
        modality: the tower to convert.
        mode: one of `MODES`.
        representative_inputs: for `"int8"`, an iterable of single-example inputs in the
            tower's input format (a few hundred from the training data).
        allow_flex: bool, allow TensorFlow (Flex) ops the builtin runtime lacks.
        layers_used: bool, also output `"layers_used"`, int32 `[1]`: the blocks the tower
            ran, from an encoder with early exit (`TransformerEncoder(exit_threshold=)`).

    Returns:
        The `.tflite` file's bytes.
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    if mode == "int8" and representative_inputs is None:
        raise ValueError("`int8` mode calibrates on `representative_inputs`. Received: None")
    spec = tower_input_spec(model, modality)
    audio = model.tower_input(modality).kind == "audio"
    with tempfile.TemporaryDirectory() as saved_model_dir:
        # The endpoint tracks the variables it uses; tracking the whole model would also
        # bring in resources it holds for other uses (a preset's tokenizer tables), whose
        # initializers TFLite's builtins cannot run.
        archive = keras.export.ExportArchive()
        archive.add_endpoint(
            "embed", lambda x: _tower_outputs(model, modality, x, layers_used), [spec]
        )
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, ["embed"])
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":

            def convert():
                return _selective_int8(converter, spec, representative_inputs, audio)

        else:
            convert = converter.convert
        tflite_model = _convert(converter, convert, modality, allow_flex)
        if mode == "dynamic" and audio:
            tflite_model = float_spectrogram_weights(tflite_model)
        return strip_tensor_names(tflite_model)


def _tower_outputs(model, modality, x, layers_used):
    if not layers_used:
        return {"embedding": model.embed(modality, x)}
    embedding, sequence = model.embed_and_encode(modality, x)
    if "layers_used" not in sequence:
        raise ValueError(
            f"Expected the {modality!r} tower to exit early, to report the layers it used. "
            f"Received an encoder without `exit_threshold`: {sequence['tokens'].shape[1]} "
            "tokens out, no `layers_used`"
        )
    return {"embedding": embedding, "layers_used": sequence["layers_used"]}


def _convert(converter, convert, modality, allow_flex):
    """Runs `convert()` on builtin ops (plus Flex if allowed), naming missing ops if any."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if allow_flex:
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    try:
        return convert()
    except Exception as error:  # the converter raises several error types
        message = str(error)
        missing = sorted(set(re.findall(r"'tf\.(\w+)' op is neither", message)))
        if "ERROR_NEEDS_CUSTOM_OPS" in message:
            hint = "Some of them have no Flex kernel either: rewrite them with builtin ops."
        elif "ERROR_NEEDS_FLEX_OPS" in message:
            hint = "Pass allow_flex=True to ship them with the Flex delegate."
        else:
            raise
        raise ValueError(
            f"Converting the {modality!r} tower needs ops the builtin TFLite runtime lacks. "
            f"Expected builtin ops only. Received ops: {missing}. {hint}"
        ) from error


def strip_tensor_names(tflite_model):
    """Drops tensor names, the file's largest non-weight part; signatures stay usable."""
    model = flatbuffer_utils.convert_bytearray_to_object(tflite_model)
    model.description = None
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _ops_before_log(model):
    """The operators (object API) of the main graph that run before its first LOG, or []."""
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    logs = [i for i, op in enumerate(graph.operators) if codes[op.opcodeIndex] == _LOG]
    return graph.operators[: logs[0]] if logs else []


def float_spectrogram_weights(tflite_model):
    """A "dynamic" file with float weights restored in the ops before the first LOG.

    Dynamic-range quantization makes the mel projection a hybrid FULLY_CONNECTED, which
    quantizes its input, the spectrum's magnitudes, to 8 bits on the fly: see
    `spectrogram_nodes` for what that does (cosine 0.85 to the float embeddings). The
    int8 weights are dequantized back to float32 (the mel filters lose nothing that
    matters: cosine 0.99999), so the op runs in float.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(tflite_model)
    graph = model.subgraphs[0]
    changed = False
    for op in _ops_before_log(model):
        for index in op.inputs:
            tensor = graph.tensors[index] if index >= 0 else None
            buffer = model.buffers[tensor.buffer] if tensor is not None else None
            if tensor is None or tensor.type != schema.TensorType.INT8 or buffer.data is None:
                continue
            weights = np.frombuffer(bytes(buffer.data), np.int8).reshape(tensor.shape)
            scale = np.asarray(tensor.quantization.scale, np.float32)
            if scale.size > 1:  # one scale per slice along the quantized dimension
                shape = [1] * weights.ndim
                shape[tensor.quantization.quantizedDimension] = -1
                scale = scale.reshape(shape)
            values = (weights.astype(np.float32) * scale).astype(np.float32)
            buffer.data = np.frombuffer(values.tobytes(), np.uint8)
            tensor.type = schema.TensorType.FLOAT32
            tensor.quantization = None
            changed = True
    if not changed:
        return tflite_model
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def spectrogram_nodes(tflite_model):
    """Output names of the ops before the first LOG: an audio tower's spectrogram.

    Magnitudes of a spectrum span decades (the log-mel exists for that), so 8 bits of
    them keep the loud bins and round the quiet ones to zero, which the log then turns
    into its floor: the framing GATHER and the mel FULLY_CONNECTED in int8 gave
    embeddings of cosine 0.3 to the float ones (-0.37 on a trained digits tower). These ops
    stay float. Empty for a graph without a LOG.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(tflite_model)
    tensors = model.subgraphs[0].tensors
    return [tensors[i].name.decode() for op in _ops_before_log(model) for i in op.outputs]


def _selective_int8(converter, spec, representative_inputs, audio=False):
    examples = [
        np.asarray(x, spec.dtype.as_numpy_dtype).reshape(spec.shape) for x in representative_inputs
    ]
    if not examples:
        raise ValueError("`representative_inputs` must hold at least one example. Received: 0")

    def dataset():
        for example in examples:
            yield {spec.name: example}

    converter.representative_dataset = dataset
    # One scale per weight tensor, not per output channel: per-channel scales and int64
    # zero points of weights and biases are ~20 KB of a 120 KB demo tower, and per-tensor
    # scales keep the embeddings within cosine 0.999 here.
    converter._experimental_disable_per_channel = True
    float_model = _float_model(converter)
    denylisted = [op for op in tflite_ops(float_model) if op not in INT8_OPS]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=denylisted,
            denylisted_nodes=spectrogram_nodes(float_model) if audio else [],
        ),
    )
    return debugger.get_nondebug_quantized_model()


def _float_model(converter):
    optimizations, converter.optimizations = converter.optimizations, []
    try:
        return converter.convert()
    finally:
        converter.optimizations = optimizations


def write_tflite(tflite_model, path, allow_flex=False):
    """Writes a flatbuffer to `path` via a temporary file; refuses Flex ops unless allowed.

    Returns:
        The sorted op names of the file.
    """
    ops = tflite_ops(tflite_model)
    flex = [op for op in ops if op.startswith("Flex")]
    if flex and not allow_flex:
        raise ValueError(f"Expected TFLite builtin ops only. Received Flex ops: {flex} (in {path})")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tflite-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(tflite_model)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
    return ops
