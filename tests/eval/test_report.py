"""report.html from hand-made records: wrong answers first, one thumbnail per image, escaped text,
nothing external."""

from html.parser import HTMLParser

from PIL import Image

from llava_compare.data.sample import Message, Sample
from llava_compare.eval.metrics import summarize
from llava_compare.eval.report import render_html


class Items(HTMLParser):
    def __init__(self):
        super().__init__()
        self.order, self.imgs, self.tags = [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "div" and "item" in (a.get("class") or "").split():
            self.order.append((a["data-id"], a["data-correct"]))
        if tag == "img":
            self.imgs.append(a["src"])


def test_render_html_orders_wrong_first_and_embeds_every_image():
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    samples, records = [], []
    for i in range(6):
        k = 2 + i % 3
        samples.append(Sample(f"s{i}", [Message("user", "q")], images=[img] * k))
        rec = {"id": f"s{i}", "task": "t", "num_images": k, "question": "Is <b>this</b> & that?", "answer": "x"}
        if i == 5:  # a free-form item that is not an exact match counts as wrong
            rec.update(prediction="y", exact_match=False, f1=0.0)
        else:
            rec.update(options=["x", "y"], gold_index=0, chance=0.5, pred_index=None if i == 3 else i % 2,
                       prediction=None if i == 3 else ["x", "y"][i % 2], correct=i % 2 == 0 and i != 3,
                       **({"generated": "no idea", "parsed": False} if i == 3 else {}))
        records.append(rec)
    page = render_html(records, samples, summarize(records), {"command": "llava-compare eval m --data d"})
    p = Items()
    p.feed(page)
    assert p.order == [("s1", "0"), ("s3", "0"), ("s5", "0"), ("s0", "1"), ("s2", "1"), ("s4", "1")]
    assert len(p.imgs) == sum(len(s.images) for s in samples)
    assert all(src.startswith("data:image/png;base64,") for src in p.imgs)
    assert "Is &lt;b&gt;this&lt;/b&gt; &amp; that?" in page and "unparseable" in page
    assert not p.tags & {"script", "link", "iframe"} and "http" not in page
    limited = Items()
    limited.feed(render_html(records, samples, summarize(records), max_items=2))
    assert limited.order == [("s1", "0"), ("s3", "0")]
