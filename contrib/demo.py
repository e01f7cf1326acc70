#!/usr/bin/env python3
"""`make demo`: make three small sample files and upload them to a running LOOP, in order.

    make run                                   # in one terminal
    make demo                                  # in another: three items start to play
    python3 contrib/demo.py --url http://loop.local --out /tmp/samples

The samples are generated here (nothing is downloaded) and kept in `--out` (default
`var/samples`), so the README's curl recipes have files to send:

- `loop-bounce.gif`: an animated GIF, a ball bouncing across the panel (24 frames);
- `loop-bars.png`: a still, colour bars with a gradient (checks colours and fit);
- `loop-spin.gif`: a second animation, a turning wheel of dots.

They are sent one after another with `curl`-style raw uploads (`POST /api/media?name=...`), so
they join the loop in this order. An API token, when the service has one, comes from
`--token` or `$LOOP_TOKEN`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.error
import urllib.request

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 64, 32  # the shipped panel; LOOP fits them to any other


def bounce_gif(path: str) -> None:
    frames = []
    for step in range(24):
        img = Image.new("RGB", (WIDTH, HEIGHT), (10, 10, 40))
        draw = ImageDraw.Draw(img)
        x = 6 + (WIDTH - 12) * step / 23
        y = HEIGHT - 7 - abs(math.sin(step / 23 * 2 * math.pi)) * (HEIGHT - 14)
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=(255, 170, 0))
        draw.line((0, HEIGHT - 2, WIDTH, HEIGHT - 2), fill=(0, 160, 90))
        frames.append(img)
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=60, loop=0)


def bars_png(path: str) -> None:
    img = Image.new("RGB", (WIDTH, HEIGHT))
    colours = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0),
               (255, 0, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)]
    draw = ImageDraw.Draw(img)
    bar = WIDTH // len(colours)
    for n, colour in enumerate(colours):
        draw.rectangle((n * bar, 0, (n + 1) * bar - 1, HEIGHT * 2 // 3), fill=colour)
    for x in range(WIDTH):
        level = round(255 * x / (WIDTH - 1))
        draw.line((x, HEIGHT * 2 // 3 + 1, x, HEIGHT - 1), fill=(level, level, level))
    img.save(path, "PNG")


def spin_gif(path: str) -> None:
    frames = []
    for step in range(16):
        img = Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 0))
        draw = ImageDraw.Draw(img)
        for dot in range(8):
            angle = (dot + step / 2) * math.pi / 4
            x = WIDTH / 2 + math.cos(angle) * 12
            y = HEIGHT / 2 + math.sin(angle) * 12
            shade = 60 + 195 * dot // 7
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(shade, 40, 255 - shade))
        frames.append(img)
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


SAMPLES = (("loop-bounce.gif", bounce_gif), ("loop-bars.png", bars_png),
           ("loop-spin.gif", spin_gif))


def make_samples(out: str) -> list[str]:
    """Write the samples into `out` (made if missing); their paths, in upload order."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for name, make in SAMPLES:
        path = os.path.join(out, name)
        make(path)
        paths.append(path)
    return paths


def upload(url: str, path: str, token: str | None) -> dict:
    """One raw upload; the answer's envelope (raises with the server's message on failure)."""
    with open(path, "rb") as fh:
        body = fh.read()
    name = urllib.request.quote(os.path.basename(path))
    request = urllib.request.Request(f"{url.rstrip('/')}/api/media?name={name}", data=body,
                                     method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("message")
        except ValueError:
            message = exc.reason
        raise SystemExit(f"demo: {os.path.basename(path)}: HTTP {exc.code}: {message}") \
            from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"demo: cannot reach LOOP at {url} ({exc.reason}); is `make run` "
                         "going?") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("LOOP_URL", "http://127.0.0.1:8080"),
                        help="where LOOP answers (default: $LOOP_URL or http://127.0.0.1:8080)")
    parser.add_argument("--out", default=os.path.join("var", "samples"),
                        help="where the sample files go (default: var/samples)")
    parser.add_argument("--token", default=os.environ.get("LOOP_TOKEN"),
                        help="the API token, when web.api_token is set (or $LOOP_TOKEN)")
    args = parser.parse_args(argv)
    for path in make_samples(args.out):
        answer = upload(args.url, path, args.token)
        item = answer["data"]["results"][0]["item"]
        print(f"{path}: {item['kind']} {item['id']} ({answer['message'] or 'stored'})")
    print(f"open {args.url.rstrip('/')}/ to see them play")
    return 0


if __name__ == "__main__":
    sys.exit(main())
