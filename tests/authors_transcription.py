"""Our transcription of the two functions of the authors' released QSFL code that decide what a client
sends and how the server aggregates it, written for ``tests/qsfl/test_authors_code.py``.

Source: github.com/LipingYi/QSFL at commit 4b11db9 ("Add files via upload"):
- ``fl_client_QSFL.py``, ``on_request_update``, lines 157-243 (relevance, segmentation, top-p);
- ``fl_server_QSFL.py``, ``Aggregator.update_weights``, lines 104-186 (QJ, decoding, per-segment mean),
  called from ``handle_client_update`` (lines 383-403) after sorting the updates by client id (line 394).

Each step cites the line it reproduces. It is our own code, not a copy: loops over single entries are
written as the equivalent numpy operation (said at each place), and the hyperparameters they hard-code
(beta 0.9 line 110, alpha 0.7 line 117, NS 6 lines 139/191, p 0.4 line 211) are arguments with those
defaults. Two deliberate departures, each marked ``DEPARTURE``:

1. Line 207 sorts with numpy's default ``argsort`` kind, which is not stable, so which of several equal
   |values| survive the cut is up to the numpy build; we sort with ``kind="stable"`` (equal values keep
   index order), so the highest tied indices are kept. ``ARGSORT_KIND`` switches back.
2. Line 169 fails (numpy cannot broadcast ``round(n / NS)`` values into a slice that ``n`` cuts short)
   whenever the server receives a segment that reaches past the model's end. ``clip_overflow=True``
   writes only the part of the mean that fits, which is what ``qsfl.authors_code`` does instead.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from functools import reduce

import numpy as np

ARGSORT_KIND = "stable"   # DEPARTURE 1: theirs is numpy's default ("quicksort", not stable)


def client_update(cur_round: int, client_id: int, my_weights: list[np.ndarray],
                  previous_global_model: list[np.ndarray], *, num_seg: int = 6, p: float = 0.4) -> dict:
    """``on_request_update`` after local training: what one client sends (client lines 157-243)."""
    # lines 158-169: flatten both models into (n, 1) columns
    local_weigths = copy.deepcopy(my_weights)
    compare_global_model = copy.deepcopy(previous_global_model)
    concatenate_X = np.concatenate([x.reshape(-1, 1) for x in local_weigths])
    concatenate_XX = np.concatenate([x.reshape(-1, 1) for x in compare_global_model])
    # lines 171-179: share of coordinates whose signs agree; their loop compares the integer signs one by one
    sign_X = np.sign(concatenate_X).astype(int)
    sign_XX = np.sign(concatenate_XX).astype(int)
    count = int(np.count_nonzero(sign_X == sign_XX))
    relevant = count / len(sign_X)

    # lines 185-197: NS segments of round(n / NS) entries each (np.round: half to even); numpy slicing cuts
    # the last ones at n (possibly to nothing), and the tail past NS * round(n / NS) is in no segment
    X = copy.deepcopy(my_weights)
    concatenate_X = np.concatenate([x.reshape(-1, 1) for x in X])
    num_paras_segment = np.round(len(concatenate_X) / num_seg).astype(int)
    segments = []
    start_point = 0
    for _ in range(num_seg):
        segments.append(concatenate_X[start_point:start_point + num_paras_segment])
        start_point = start_point + num_paras_segment

    # lines 200-201: the cyclic segment id, client ids from 1 (run.sh passes --clientID 1..N)
    seg_id = (cur_round + client_id) % num_seg
    to_compress = segments[seg_id]

    # lines 206-213: rank the segment's *weights* by magnitude, keep the last round(p * len) of the
    # ascending order; when that rounds to 0 the slice [-0::] keeps the whole segment. (Their .tolist()
    # turns the (len, 1) index array into a list of [i] lists for pickling; slicing the array is the same.)
    uncompressed_paras = to_compress
    sorted_concatenate_X = np.argsort(np.abs(uncompressed_paras), axis=0, kind=ARGSORT_KIND)
    total_counts = len(to_compress)
    remained_paras_count = round(p * total_counts)
    remained_paras_index = sorted_concatenate_X[-remained_paras_count::]

    # lines 215-217: their loop appends uncompressed_paras[[i]].tolist() == [[value]] per kept index [i];
    # indexing with the (k, 1) index array at once gives the same values, as a (k, 1, 1) array
    compressed_paras = uncompressed_paras[remained_paras_index]

    # lines 235-243: the message (train_size, train_loss and clientID are added by the caller)
    return {"round_number": cur_round, "remained_paras_index": remained_paras_index,
            "compressed_paras": compressed_paras, "relevant": relevant, "clientID": client_id}


def update_weights(remained_paras_index: list, compressed_paras: list, clientIDs: list[int], relevants: list[float],
                   client_sizes: list[int], client_losses: list[float], *, current_round: int,
                   pretrained_weights: list[np.ndarray], beta: float = 0.9, alpha: float = 0.7, num_seg: int = 6,
                   clip_overflow: bool = False) -> tuple[list[np.ndarray], list[int]]:
    """``Aggregator.update_weights`` (server lines 104-186): (new global weights per layer, qualified ids).

    ``pretrained_weights`` is what their line 128 loads (``pickle.load(...)[0]`` at line 132).
    The qualified ids are those whose score the server did not zero (line 147's test).
    """
    # lines 107-111: QJ score (1 - beta) * relevance + beta * normalised loss per sample (Python's sum)
    client_contributions = np.array(client_losses) / np.abs(client_sizes)
    norm_contributions = client_contributions / sum(client_contributions)
    new_metrics = [(1 - beta) * relevants[i] + beta * norm_contributions[i] for i in range(len(relevants))]

    # lines 114-122: scores under the (1 - alpha) * 100 percentile are zeroed
    client_num = len(remained_paras_index)
    alpha_ = (1 - alpha) * 100
    Threshold = np.percentile(new_metrics, alpha_)
    for i in range(client_num):
        if new_metrics[i] < Threshold:
            new_metrics[i] = 0

    # lines 128-140: every round starts from the fixed pretrained model
    XX = copy.deepcopy(pretrained_weights)
    shapes = []
    for i in range(len(XX)):
        shapes.append(XX[i].shape)
        XX[i] = XX[i].reshape(-1, 1)
    concatenate_XX = np.concatenate(XX)
    num_paras_segment = np.round(len(concatenate_XX) / num_seg).astype(int)

    # lines 130, 142-155: decode each client's sparse segment into zeros of length round(n / NS). The
    # score is looked up by clientID - 1 (line 147): the client's own score only when the sorted ids are
    # exactly 1..C. Line 155 sits inside the per-entry loop, so the same (finally fully decoded) array is
    # appended once per sent entry; we keep (array, times appended) instead of that many references.
    segments: dict[int, list[tuple[np.ndarray, int]]] = defaultdict(list)
    for c in range(len(client_sizes)):
        cur_client_id = clientIDs[c]
        cur_seg_id = (current_round + cur_client_id) % num_seg
        current_segment = np.zeros(num_paras_segment)
        if new_metrics[cur_client_id - 1] == 0:
            pass
        else:
            current_remained_paras_index = remained_paras_index[c]
            current_compressed_paras = compressed_paras[c]
            # their per-entry loop sets current_segment[[i]] = [[value]]; same assignment at once
            if len(current_remained_paras_index):
                idx = np.asarray(current_remained_paras_index).reshape(-1)
                current_segment[idx] = np.asarray(current_compressed_paras, dtype=np.float64).reshape(-1)
                segments[cur_seg_id].append((current_segment, len(current_remained_paras_index)))

    # lines 158-169: mean over the appended arrays (a plain mean: within one segment every client sends
    # the same count), written over the segment, zeros included
    for seg_id, seg_values in segments.items():
        start_index = num_paras_segment * seg_id
        sum_vec = np.zeros(num_paras_segment)
        for item, times in seg_values:
            sum_vec += times * item
        avg_vec = sum_vec / sum(times for _, times in seg_values)
        if clip_overflow:   # DEPARTURE 2 (opt-in): keep what fits instead of failing
            avg_vec = avg_vec[:len(concatenate_XX[start_index:start_index + num_paras_segment])]
        concatenate_XX[start_index:start_index + num_paras_segment] = avg_vec.reshape(-1, 1)

    # lines 174-186: back to the layer shapes
    original_XX = []
    current_element_index_in_XX = 0
    current_sub_matrix = 0
    while current_element_index_in_XX < concatenate_XX.shape[0]:
        current_count = reduce(lambda x, y: x * y, shapes[current_sub_matrix])
        original_XX.append(concatenate_XX[current_element_index_in_XX:current_element_index_in_XX
                                          + current_count].reshape(shapes[current_sub_matrix]))
        current_sub_matrix = current_sub_matrix + 1
        current_element_index_in_XX += current_count
    qualified = [cid for cid in clientIDs if new_metrics[cid - 1] != 0]
    return original_XX, qualified


def server_round(updates: list[dict], *, current_round: int, pretrained_weights: list[np.ndarray],
                 beta: float = 0.9, alpha: float = 0.7, num_seg: int = 6,
                 clip_overflow: bool = False) -> tuple[list[np.ndarray], list[int]]:
    """``handle_client_update`` once every contacted client has answered (server lines 392-403)."""
    updates = sorted(updates, key=lambda x: int(x["clientID"]))   # line 394
    return update_weights([x["remained_paras_index"] for x in updates], [x["compressed_paras"] for x in updates],
                          [x["clientID"] for x in updates], [x["relevant"] for x in updates],
                          [x["train_size"] for x in updates], [x["train_loss"] for x in updates],
                          current_round=current_round, pretrained_weights=pretrained_weights, beta=beta,
                          alpha=alpha, num_seg=num_seg, clip_overflow=clip_overflow)
