"""Score filtering, batched NMS and the map back to client pixels as torch functions, on the
candidates' device (CUDA in production, CPU in the tests here); the same faces as
`facedet_server.faces.select` on the host."""

from __future__ import annotations

import numpy as np
import torch

from facedet_server.faces.options import Options
from facedet_server.tensor.letterbox import Letterbox


def _nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS for machines without torchvision (its CPU build does not load beside the
    CPU torch wheel here); quadratic, fine for the few hundred candidates left after scoring."""
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    ix = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
    iy = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
    inter = ix * iy
    union = areas[:, None] + areas[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter)).cpu().numpy()
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices kept, by descending score, with suppression only inside each group (image)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    try:
        from torchvision.ops import batched_nms as tv_batched_nms
    except (ImportError, RuntimeError):
        # Offsetting each group by more than the largest coordinate keeps groups disjoint.
        offsets = groups.to(boxes.dtype)[:, None] * (boxes.max() + 1)
        return _nms_reference(boxes + offsets, scores, iou)
    kept: torch.Tensor = tv_batched_nms(boxes, scores, groups, iou)
    return kept


def select_faces_batch(
    candidates: torch.Tensor,
    options: list[Options],
    transforms: list[Letterbox],
    sizes: list[tuple[int, int]],
) -> list[np.ndarray]:
    """(N, K, 15) candidates [cx, cy, w, h, score, landmarks] in network pixels -> per image an
    (M, 15) float32 array of corner boxes, score and landmarks in client pixels, sorted by score.
    Everything up to the final small copy stays on the candidates' device."""
    device = candidates.device
    candidates = candidates.float()
    # Every per-image number the GPU needs, in one host->device copy.
    per_image = torch.tensor(
        [
            [o.min_confidence, t.gain_x, t.gain_y, t.offset_x, t.offset_y, w, h, o.iou_threshold]
            for o, t, (w, h) in zip(options, transforms, sizes, strict=True)
        ],
        dtype=torch.float32,
    ).to(device, non_blocking=True)
    image_idx, anchor_idx = torch.nonzero(candidates[..., 4] >= per_image[:, 0:1], as_tuple=True)
    picked = candidates[image_idx, anchor_idx]
    boxes = torch.cat([picked[:, 0:2] - picked[:, 2:4] / 2, picked[:, 0:2] + picked[:, 2:4] / 2], dim=1)
    scores = picked[:, 4]
    ious = sorted({o.iou_threshold for o in options})
    if len(ious) == 1:
        keep = batched_nms(boxes, scores, image_idx, ious[0])
    else:
        # Rare: images of one batch asking for different IoU thresholds; one NMS per threshold.
        parts = []
        for iou in ious:
            idx = torch.nonzero(per_image[image_idx, 7] == iou, as_tuple=True)[0]
            parts.append(idx[batched_nms(boxes[idx], scores[idx], image_idx[idx], iou)])
        keep = torch.cat(parts)
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    owners = image_idx[keep]
    info = per_image[owners]
    xy = torch.cat([boxes[keep], picked[keep, 5:]], dim=1).view(-1, 7, 2)
    xy = (xy - info[:, None, 3:5]) * info[:, None, 1:3]
    xy = torch.minimum(xy.clamp(min=0), info[:, None, 5:7])
    xy = xy.view(-1, 14)
    rows = torch.cat([owners[:, None].float(), xy[:, 0:4], scores[keep, None], xy[:, 4:]], dim=1)
    host = rows.cpu().numpy()  # the one device->host copy; also waits for the GPU work above
    results: list[np.ndarray] = []
    for i, opt in enumerate(options):
        faces = host[host[:, 0] == i, 1:]  # already in descending score order
        if opt.min_face_size > 0:
            sides = np.minimum(faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1])
            faces = faces[sides >= opt.min_face_size]
        results.append(np.ascontiguousarray(faces[: opt.max_faces], dtype=np.float32))
    return results
