"""End to end on the synthetic context set: the learned pairwise CRF must beat its own unaries.

The two object classes look alike; only a marker far above an object (beyond the unary receptive
field, within the "above_below" relation) tells them apart. Trains the demo config for a fixed
number of steps (about a minute here), then scores unary-only and mean-field predictions.
"""

import pytest
import torch

from piecewise_crf.config import CRFConfig, load_config
from piecewise_crf.data.synthetic import SyntheticContext
from piecewise_crf.inference import crf_marginals
from piecewise_crf.metrics import ConfusionMatrix
from piecewise_crf.model import build_model

STEPS = 200


# Two OpenMP threads on a 2-core machine that is also running other work slow this down a lot.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_crf_beats_unary_on_synthetic_context():
    torch.manual_seed(0)
    config = load_config("demo", ["model.num_classes=5"])
    model = build_model(config.model)
    train = SyntheticContext(256, seed=0)
    val = SyntheticContext(32, seed=1)
    loader = torch.utils.data.DataLoader(
        train, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.SGD(model.parameters(), lr=config.train.lr, momentum=0.9, weight_decay=1e-4)
    step = 0
    while step < STEPS:
        for images, labels in loader:
            loss = model.loss(images, labels).total
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == STEPS:
                break

    model.eval()
    unary, crf = ConfusionMatrix(5), ConfusionMatrix(5)
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.stack([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        unary.update(crf_marginals(model, images, CRFConfig(iterations=0)).argmax(1), labels)
        crf.update(crf_marginals(model, images, CRFConfig(iterations=3)).argmax(1), labels)
    u, c = unary.compute(), crf.compute()
    objects = slice(1, 3)  # object_a, object_b: the classes only context can resolve

    def object_iou(m):
        return sum(m["per_class_iou"][objects]) / 2

    assert c["mean_iou"] > u["mean_iou"] + 0.03, (u["mean_iou"], c["mean_iou"])
    assert object_iou(c) > object_iou(u) + 0.08, (u["per_class_iou"], c["per_class_iou"])
