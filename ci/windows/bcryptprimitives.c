/*
 * bcryptprimitives.dll shim for running Rust programs under Wine 8.0.
 *
 * Why this exists: since Rust 1.78 the Windows std gets its random bytes
 * (HashMap's RandomState, among others) from ProcessPrng, imported from
 * bcryptprimitives.dll. Wine 8.0 (Debian 12's wine) has no ProcessPrng
 * export, so every Rust .exe fails to load before main. This DLL exports
 * ProcessPrng and forwards it to BCryptGenRandom with the system-preferred
 * RNG, which Wine does implement. It is only for the throwaway Wine prefix
 * made by ci/windows/wine-runner; real Windows has the real DLL.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll \
 *            bcryptprimitives.c -lbcrypt
 */
#include <windows.h>
#include <bcrypt.h>

#ifndef BCRYPT_USE_SYSTEM_PREFERRED_RNG
#define BCRYPT_USE_SYSTEM_PREFERRED_RNG 0x00000002
#endif

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData)
{
    /* BCryptGenRandom takes a ULONG length; loop for very large requests. */
    while (cbData > 0) {
        ULONG chunk = cbData > 0x7fffffffu ? 0x7fffffffu : (ULONG)cbData;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, pbData, chunk,
                                            BCRYPT_USE_SYSTEM_PREFERRED_RNG)))
            return FALSE;
        pbData += chunk;
        cbData -= chunk;
    }
    /* The real ProcessPrng never fails; TRUE unless Wine's RNG did. */
    return TRUE;
}
