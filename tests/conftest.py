import locale

import pytest


@pytest.fixture(autouse=True)
def restore_process_locale():
    """Some C libraries used by the tests switch the process locale to "C" (ASCII); Python then decodes
    later subprocess output and text files as ASCII. Give every test the environment's locale back."""
    yield
    try:
        locale.setlocale(locale.LC_ALL, "")
    except locale.Error:
        pass
