import pytest

from mm_keras.export import ops


def test_tf_text_ops_are_non_core_and_core_ops_are_not():
    assert ops.non_core_ops(["MatMul", "CaseFoldUTF8", "Softmax", "NoSuchOp"]) == [
        "CaseFoldUTF8",
        "NoSuchOp",
    ]


def test_stock_server_lacks_newer_tf_text_ops():
    installed, stock = ops.tf_text_ops()
    assert "FastWordpieceTokenizeWithOffsets" in stock
    assert "TFText>Utf8Binarize" in installed - stock


def test_refuses_ops_the_stock_server_lacks_unless_allowed():
    graph = ["MatMul", "CaseFoldUTF8", "TFText>Utf8Binarize"]
    with pytest.raises(ValueError, match=r"Received: \['TFText>Utf8Binarize'\]"):
        ops.check_stock_serving_ops(graph)
    allowed = ops.check_stock_serving_ops(graph, allow_ops=["TFText>Utf8Binarize"])
    assert allowed == ["CaseFoldUTF8", "TFText>Utf8Binarize"]
