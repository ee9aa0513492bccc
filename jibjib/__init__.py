"""jibjib: from a folder of bird recordings to a trained, evaluated, exported classifier."""

__version__ = "0.1.0"
