"""``prefetch``: ask the CPU to start loading a row the kernel will read soon.

The kernel's tables are far larger than the caches (a 10,000,000-connection simulate
holds millions of 48-byte records), and most of its time is spent waiting for rows it
reads one after another: a record, then its hash bucket, then the next row of the chain.
Where the row a later step needs is known early (the next connections of a batch, the
record of the next pending event) a prefetch lets that wait overlap with the work in
between. It is a hint: it changes no value and cannot fault (LLVM's ``llvm.prefetch``,
an x86 ``prefetcht0``), so the kernel's results do not depend on it.
"""

# ruff: noqa: ANN001, ANN201, ANN202
# mypy: ignore-errors

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_READ = 0
_KEEP_IN_ALL_CACHES = 3
_DATA = 1


@intrinsic
def prefetch(typingctx, array, row):
    """Prefetch the first element of ``array[row]`` (row of a 2-D array, or an element of
    a 1-D one). ``row`` must be in range for the hint to be useful; it is not checked,
    and an address outside the array is harmless (a prefetch never faults)."""
    if not isinstance(array, types.Array) or not isinstance(row, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type, row_type = signature.args
        ary = context.make_array(array_type)(context, builder, args[0])
        index = [context.cast(builder, args[1], row_type, types.intp)]
        index += [context.get_constant(types.intp, 0)] * (array_type.ndim - 1)
        pointer = cgutils.get_item_pointer2(
            context, builder, data=ary.data,
            shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides),
            layout=array_type.layout, inds=index, boundscheck=False,
        )  # fmt: skip
        bytes_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [bytes_pointer, i32, i32, i32])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
        builder.call(
            function,
            [
                builder.bitcast(pointer, bytes_pointer),
                i32(_READ),
                i32(_KEEP_IN_ALL_CACHES),
                i32(_DATA),
            ],
        )
        return context.get_dummy_value()

    return types.void(array, row), codegen
