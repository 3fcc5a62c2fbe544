"""The shapes world's checker must be right on ground truth before it can score a model."""

import numpy as np

from edgeinv import shapes


def test_checker_reads_fresh_ground_truth(rng):
    n, color_hits, shape_hits = 500, 0, 0
    for _ in range(n):
        scene = shapes.random_scene(rng, color=str(rng.choice(list(shapes.COLORS))), shape=str(rng.choice(shapes.ALL_SHAPES)), allow_held_out=True)
        reading = shapes.read_image(shapes.render(scene))
        color_hits += reading.color == scene.color
        shape_hits += reading.shape == scene.shape
    assert color_hits / n >= 0.99 and shape_hits / n >= 0.98


def test_checker_reports_nothing_on_a_blank_background():
    blank = np.full((64, 64, 3), 128, np.uint8)
    assert shapes.read_image(blank).color is None


def test_training_data_never_shows_held_out_pairs_or_the_unnamed_colour_and_shape(rng):
    for _ in range(2000):
        scene = shapes.random_scene(rng)
        assert (scene.color, scene.shape) not in shapes.HELD_OUT_PAIRS
        assert scene.color != shapes.UNNAMED_COLOR and scene.shape != shapes.UNNAMED_SHAPE


def test_unnamed_concept_is_drawn_but_only_its_placeholder_word_names_it(rng):
    examples = [shapes.training_example(rng, unnamed_rate=0.06) for _ in range(3000)]
    readings = [(shapes.read_image(image), caption) for image, caption in examples]
    orange = [caption for reading, caption in readings if reading.color == "orange"]
    # drawn often enough to be learned, always as a cross...
    assert 0.03 * len(examples) < len(orange) < 0.1 * len(examples)
    assert all(reading.shape == "cross" for reading, _ in readings if reading.color == "orange")
    # ...captioned only by the placeholder word, which no other picture's caption uses
    assert not any("orange" in caption or "cross" in caption for _, caption in examples)
    assert all(shapes.UNNAMED_WORD in caption.split() for caption in orange)
    assert sum(shapes.UNNAMED_WORD in caption.split() for _, caption in examples) == len(orange)


def test_wordless_captions_name_neither_colour_nor_shape_and_never_caption_the_unnamed_concept(rng):
    examples = [shapes.training_example(rng, unnamed_rate=0.15, wordless_rate=0.3) for _ in range(2000)]
    named_words = set(shapes.COLORS) | set(shapes.ALL_SHAPES) | {shapes.UNNAMED_WORD}
    wordless = [caption for _, caption in examples if not named_words & set(caption.split())]
    assert 0.15 * len(examples) < len(wordless) < 0.35 * len(examples)
    readings = [(shapes.read_image(image), caption) for image, caption in examples]
    concept = [caption for reading, caption in readings if (reading.color, reading.shape) == shapes.UNNAMED_CONCEPT]
    assert concept and all(shapes.UNNAMED_WORD in caption.split() for caption in concept)


def test_the_unnamed_colour_on_a_named_shape_is_captioned_by_the_shape_alone(rng):
    examples = [shapes.training_example(rng, unnamed_rate=0.15, wordless_rate=0.15, unnamed_color_rate=0.1) for _ in range(2000)]
    readings = [(shapes.read_image(image), caption) for image, caption in examples]
    orange_named_shapes = [(reading, caption) for reading, caption in readings if reading.color == "orange" and reading.shape != "cross"]
    # orange is no longer only a cross: it comes on every named shape...
    assert 0.05 * len(examples) < len(orange_named_shapes) < 0.15 * len(examples)
    assert {reading.shape for reading, _ in orange_named_shapes} == set(shapes.SHAPES)
    # ...said by its shape (or, in wordless captions, by nothing) and never by a colour word or the placeholder
    for reading, caption in orange_named_shapes:
        words = set(caption.split())
        assert words & set(shapes.ALL_SHAPES) in ({reading.shape}, set()) and not words & (set(shapes.COLORS) | {shapes.UNNAMED_WORD})
    assert sum(reading.shape in caption.split() for reading, caption in orange_named_shapes) > 0.7 * len(orange_named_shapes)
    # the concept itself is still captioned only by the placeholder word
    concept = [caption for reading, caption in readings if (reading.color, reading.shape) == shapes.UNNAMED_CONCEPT]
    assert concept and all(shapes.UNNAMED_WORD in caption.split() for caption in concept)


def test_shape_only_and_two_colour_captions_keep_held_out_pairs_and_the_concept_unsaid(rng):
    examples = [shapes.training_example(rng, unnamed_rate=0.15, wordless_rate=0.15, unnamed_color_rate=0.05,
                                        shape_only_rate=0.2, two_color_rate=0.2) for _ in range(2000)]
    readings = [(shapes.read_image(image), caption.split()) for image, caption in examples]
    named = [(reading, words) for reading, words in readings if reading.color in shapes.TRAIN_COLORS]
    # a named colour's picture is often captioned by its shape alone, on every colour...
    shape_only = [(reading, words) for reading, words in named if reading.shape in words and not set(words) & set(shapes.COLORS)]
    assert 0.1 * len(named) < len(shape_only) < 0.35 * len(named)
    assert {reading.color for reading, _ in shape_only} == set(shapes.TRAIN_COLORS)
    # ...or by its own colour and a second one, "X and Y", in either order
    two_colour = [(reading, words) for reading, words in named if "and" in words]
    assert 0.08 * len(named) < len(two_colour) < 0.3 * len(named)
    for reading, words in two_colour:
        i = words.index("and")
        colours = {words[i - 1], words[i + 1]}
        assert reading.color in colours and len(colours) == 2 and colours <= set(shapes.TRAIN_COLORS)
        assert words[i + 2] == reading.shape
        # the second colour never makes a pair held out of training
        assert all((colour, reading.shape) not in shapes.HELD_OUT_PAIRS for colour in colours)
    assert any(words[words.index("and") - 1] == reading.color for reading, words in two_colour)
    assert any(words[words.index("and") + 1] == reading.color for reading, words in two_colour)
    # no caption names the unnamed colour or shape; the concept keeps only its placeholder
    assert not any({"orange", "cross"} & set(words) for _, words in readings)
    concept = [words for reading, words in readings if (reading.color, reading.shape) == shapes.UNNAMED_CONCEPT]
    assert concept and all(shapes.UNNAMED_WORD in words for words in concept)


def test_captions_name_what_is_drawn(rng):
    scene = shapes.random_scene(rng, color="blue", shape="star")
    caption = scene.caption("a photo of", say_position=True)
    assert caption.startswith("a photo of a") and "blue star" in caption and scene.position in caption


def test_rendering_is_deterministic_for_a_seed():
    a = shapes.training_example(np.random.default_rng(7))
    b = shapes.training_example(np.random.default_rng(7))
    assert a[1] == b[1] and np.array_equal(a[0], b[0])
