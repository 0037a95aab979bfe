"""Placeholder until the runtime lands."""


def add_arguments(parser):
    pass


def main(args):
    raise NotImplementedError
