"""Test helpers for the field's .bin sets, written independently of the code under test: the published byte
layout, and insightface's verification protocol re-implemented from its description with numpy alone."""

from __future__ import annotations

import struct

import numpy as np


def python2_bin(images: list[bytes], same: list[bool]) -> bytes:
    """The published layout (protocol 2, SHORT_BINSTRING/BINSTRING, NEWTRUE/NEWFALSE), opcode by opcode."""
    out = bytearray(b"\x80\x02]q\x00(")
    for image in images:
        out += (b"U" + bytes([len(image)]) if len(image) < 256 else b"T" + struct.pack("<i", len(image))) + image
    out += b"e]q\x01(" + b"".join(b"\x88" if flag else b"\x89" for flag in same) + b"e\x86q\x02."
    return bytes(out)


def insightface_reference(embeddings: np.ndarray, issame: np.ndarray) -> tuple[float, float, list[float]]:
    """insightface eval/verification.py (pca=0), rewritten from its description with numpy alone: squared L2
    distance of each pair, 400 thresholds np.arange(0, 4, 0.01), KFold(10, shuffle=False) over the pair
    indices, per fold the train accuracy of every threshold one by one, the first best applied to the test fold."""
    first, second = embeddings[0::2], embeddings[1::2]
    dist = np.sum(np.square(np.subtract(first, second)), 1)
    thresholds = np.arange(0, 4, 0.01)
    pairs = len(issame)
    sizes = [pairs // 10 + (1 if fold < pairs % 10 else 0) for fold in range(10)]
    starts = np.cumsum([0] + sizes)
    accuracy = []
    for fold in range(10):
        test_set = np.arange(starts[fold], starts[fold + 1])
        train_set = np.setdiff1d(np.arange(pairs), test_set)
        acc_train = np.zeros(len(thresholds))
        for index, threshold in enumerate(thresholds):
            predict = np.less(dist[train_set], threshold)
            acc_train[index] = float(np.sum(predict == issame[train_set])) / len(train_set)
        best = np.argmax(acc_train)
        predict = np.less(dist[test_set], thresholds[best])
        accuracy.append(float(np.sum(predict == issame[test_set])) / len(test_set))
    return float(np.mean(accuracy)), float(np.std(accuracy)), accuracy


def sklearn_normalize(rows: np.ndarray) -> np.ndarray:
    """sklearn.preprocessing.normalize (l2): each row over its norm, an all-zero row left as it is."""
    norms = np.sqrt(np.sum(rows * rows, axis=1))
    norms[norms == 0] = 1.0
    return rows / norms[:, None]
