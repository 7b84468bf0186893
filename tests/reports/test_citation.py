"""Methods boilerplate."""

from bids_mcsr.reports.citation import methods_text

BASE = {"bias_correction": "n4", "registration": "rigid", "reference": None, "model": "fast",
        "slice_profile": "gaussian", "epochs": None, "output_resolution": None,
        "output_grid": None}


def test_cites_the_method_and_the_tools():
    text = methods_text(BASE)
    assert "McGinnis" in text and "implicit neural representations" in text
    for key in ("[n4]", "[ants]", "[nipype]", "[pybids]", "[pytorch]"):
        assert key in text
    assert "no stack was resampled" in text
    assert "3 rounds of iterative back-projection [ibp]" in text and "Irani" in text


def test_follows_the_options():
    text = methods_text({**BASE, "bias_correction": "none", "registration": "none",
                         "output_resolution": 1.5, "epochs": 7})
    assert "[n4]" not in text and "[ants]" not in text
    assert "1.5 mm grid" in text and "7 epochs" in text
    assert "back-projection" not in methods_text({**BASE, "consistency_iterations": 0})
    assert "by 1 round of" in methods_text({**BASE, "consistency_iterations": 1})
    assert "the T2w stack" in methods_text({**BASE, "reference": "T2w"})
    assert "guided filter [guided]" in text and "He K" in text
    off = methods_text({**BASE, "guided_upsampling": "off"})
    assert "[guided]" not in off and "He K" not in off
